#!/usr/bin/env bash
# Installs the Debian packages later parts need (FUSE for mountd, bubblewrap for workers).
# Never fails the build: if it cannot install, it says why in one line; tests that need
# a missing piece skip and name it.
set -u
need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
[ -e /usr/include/fuse3/fuse.h ] || need+=(libfuse3-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
# Images for local workers (docs/images.md): a real registry and a one-file userland for
# the tests' images; skopeo is the peer of the image benchmark.
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 && ! ldd /bin/busybox >/dev/null 2>&1 || need+=(busybox-static)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
# rclone: one of the real S3 clients the S3 gateway is tested with.
command -v rclone >/dev/null 2>&1 || need+=(rclone)
# Headless Chromium and its WebDriver: the web console's browser test.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "note: not root, cannot install ${need[*]}; tests needing them will skip" >&2; exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: not a Debian system (no apt-get), cannot install ${need[*]}; tests needing them will skip" >&2; exit 0
fi
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } >/tmp/tusk-apt.log 2>&1; then
  echo "note: apt-get install ${need[*]} failed (see /tmp/tusk-apt.log); tests needing them will skip" >&2
fi
exit 0
