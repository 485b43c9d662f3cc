# Run in a copy of ctx/ before each build: what git cannot hold (modes, empty dirs, a tar).
chmod 0750 script.sh
chmod 0755 other/x.bin
chmod 0600 b.txt
mkdir -p emptydir
printf 'hello\n' > tarred.txt && tar --owner=0 --group=0 --mtime=@0 -cf archive.tar tarred.txt && rm tarred.txt
