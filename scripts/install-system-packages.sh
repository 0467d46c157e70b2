#!/usr/bin/env bash
# Installs the Debian packages Tusk and its tests need (FUSE for mountd, bubblewrap for
# workers, a registry, Chromium…). Fails (exit 1, one line saying why) when one is missing
# and cannot be installed: `make test` must not run a suite that would have nothing to
# test with (tests/README.md: a missing part fails its tests, it never skips them).
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
# `kubectl kustomize` renders deploy/k8s offline (tests/test_k8s_manifests.py).
command -v kubectl >/dev/null 2>&1 || need+=(kubectl)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "error: missing ${need[*]}; run this script as root (or install them) first" >&2; exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: missing ${need[*]} and no apt-get to install them (Debian is assumed)" >&2; exit 1
fi
log=$(mktemp -t tusk-apt.XXXXXX.log)
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } >"$log" 2>&1; then
  echo "error: apt-get install ${need[*]} failed; see $log" >&2; exit 1
fi
rm -f "$log"
exit 0
