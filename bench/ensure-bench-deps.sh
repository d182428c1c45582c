# Sourced (or run) before the benchmark: installs the Debian packages only the bench needs, when missing.
#  - docker-registry: the upstream, and the reference registry in proxy mode (also a test dependency);
#  - nginx-light: serves the same blob files statically, as the "what the machine can do" baseline;
#  - wrk: the HTTP load generator for the many-request scenarios (S4, S5);
#  - redis-server, ceph-mon, ceph-osd, radosgw, ceph-common: the FLEET scenario's Redis and S3 server (a one-node
#    Ceph RADOS Gateway, test/harness/s3.ts); the test dependencies of the fleet tests too.
# Not part of scripts/ensure-test-deps.sh on purpose: CI does not run the bench.
#
# Installing nginx must not start Debian's nginx service (it would listen on 0.0.0.0:80): the bench runs its own
# nginx on 127.0.0.1 only. A policy-rc.d that refuses service starts is put in place for the install unless one
# exists already (container images usually ship one).
_need=()
command -v docker-registry >/dev/null || _need+=(docker-registry)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || _need+=(nginx-light)
command -v wrk >/dev/null || _need+=(wrk)
command -v redis-server >/dev/null || _need+=(redis-server)
command -v ceph-mon >/dev/null || _need+=(ceph-mon)
command -v ceph-osd >/dev/null || _need+=(ceph-osd)
command -v radosgw >/dev/null || _need+=(radosgw)
command -v ceph >/dev/null || _need+=(ceph-common)
if [ "${#_need[@]}" -gt 0 ]; then
  echo "ensure-bench-deps: installing ${_need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  _policy_added=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    _policy_added=1
  fi
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${_need[@]}" >&2
  _rc=$?
  [ -n "$_policy_added" ] && rm -f /usr/sbin/policy-rc.d
  unset _policy_added
  [ "$_rc" -eq 0 ] || { echo "ensure-bench-deps: apt-get install failed" >&2; return "$_rc" 2>/dev/null || exit "$_rc"; }
  unset _rc
fi
unset _need
