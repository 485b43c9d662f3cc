# Run in the fresh context: everything here is metadata git cannot hold.
mkdir -p sub ro-dir
echo owned > owned.txt && chown 1234:4321 owned.txt
echo suid > suid && chmod 4711 suid
echo odd > odd-mode && chmod 0407 odd-mode
echo link > h1 && ln h1 h2 && ln h1 sub/h3
echo x > xattr.txt && python3 -c "import os; os.setxattr('xattr.txt', 'user.kiln', b'oracle')"
ln -s sub dirlink
echo r > ro-dir/file && chmod 0555 ro-dir
