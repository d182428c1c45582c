# Sourced by scripts/test.sh: installs the Debian packages the tests run for real
# (the reference registry as upstream, Redis, skopeo, dockerd and the static busybox
# that the harness puts into the images it builds), only when something is missing.
_need=()
command -v docker-registry >/dev/null || _need+=(docker-registry)
command -v redis-server    >/dev/null || _need+=(redis-server)
command -v skopeo          >/dev/null || _need+=(skopeo)
command -v dockerd         >/dev/null || _need+=(docker.io)
[ -x /bin/busybox ]                   || _need+=(busybox-static)
if [ "${#_need[@]}" -gt 0 ]; then
  echo "ensure-test-deps: installing ${_need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${_need[@]}" >&2
fi
unset _need
