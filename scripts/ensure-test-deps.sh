# Sourced by scripts/test.sh: installs the Debian packages the tests run for real
# (the reference registry as upstream, Redis, Ceph's S3 gateway, skopeo, dockerd, the static busybox
# that the harness puts into the images it builds, debootstrap for the Dockerfile test's base image, and Go
# with the packaged sources tools/helm-render builds from), only when something is missing.
_need=()
command -v docker-registry >/dev/null || _need+=(docker-registry)
command -v redis-server    >/dev/null || _need+=(redis-server)
command -v skopeo          >/dev/null || _need+=(skopeo)
command -v dockerd         >/dev/null || _need+=(docker.io)
[ -x /bin/busybox ]                   || _need+=(busybox-static)
# The client end-to-end suite runs containerd (ctr), podman (with conmon) and runc; podman is configured for
# runc, and asking for runc here keeps apt from picking crun for podman's "crun | runc" dependency.
command -v containerd      >/dev/null || _need+=(containerd)
command -v runc            >/dev/null || _need+=(runc)
command -v podman          >/dev/null || _need+=(podman)
# The S3 server of the tests (test/harness/s3.ts) is Ceph's RADOS Gateway on a one-node cluster.
command -v ceph-mon        >/dev/null || _need+=(ceph-mon)
command -v ceph-osd        >/dev/null || _need+=(ceph-osd)
command -v radosgw         >/dev/null || _need+=(radosgw)
command -v ceph            >/dev/null || _need+=(ceph-common)
# The chart tests render through tools/helm-render (Helm's template engine), built from Debian's Go sources.
command -v go              >/dev/null || _need+=(golang-go)
for _p in golang-github-masterminds-sprig-dev golang-github-ghodss-yaml-dev golang-github-burntsushi-toml-dev golang-github-xeipuuv-gojsonschema-dev; do
  dpkg -s "$_p" >/dev/null 2>&1 || _need+=("$_p")
done
unset _p
# The Dockerfile test builds its stand-in base image (node:24-bookworm-slim) from a debootstrapped rootfs.
[ -x /usr/sbin/debootstrap ]          || _need+=(debootstrap)
if [ "${#_need[@]}" -gt 0 ]; then
  echo "ensure-test-deps: installing ${_need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${_need[@]}" >&2
fi
unset _need
