#!/usr/bin/env bash
# Writes a busybox root filesystem tarball (from Debian's busybox-static) to stdout: the base
# image for the example and for machines that cannot reach a registry.
#   scripts/make-busybox-rootfs.sh | kiln import - busybox:latest --change 'CMD ["sh"]'
set -euo pipefail
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "make-busybox-rootfs: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,etc,tmp,root,home,var,usr/bin,usr/sbin,sbin,proc,sys,dev}
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/root"
cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
cat >"$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$rootfs/etc/group" <<'GROUP'
root:x:0:
daemon:x:1:
nogroup:x:65534:
GROUP
tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -c .
