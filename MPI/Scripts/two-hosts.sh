#!/bin/sh
# Runs `mpirun -n N PROGRAM ARGS...` across two emulated hosts on this machine: two network namespaces,
# each with its own host name, joined by a veth pair carrying 127.77.X.0/24 (a loopback-range subnet),
# with a stand-in for ssh that starts Open MPI's daemon in the other namespace. Everything is torn down
# on exit. Needs root (ip netns, unshare); exits 77 with a message when namespaces are not permitted.
#
#   two-hosts.sh N PROGRAM [ARGS...]
set -eu
[ "${1:-}" = "--agent" ] && {
    # The ssh stand-in: `--agent [options] HOST COMMAND...` runs COMMAND in HOST's namespace.
    shift
    while [ "${1#-}" != "$1" ]; do shift; done
    host=$1; shift
    exec ip netns exec "$host" unshare --uts sh -c "hostname $host; $*"
}
count=$1; shift
id=$$
net=$(( id % 200 + 20 ))
a=mpa$id; b=mpb$id
work=$(mktemp -d)
cleanup() {
    ip netns del "$a" 2>/dev/null || true
    ip netns del "$b" 2>/dev/null || true
    rm -rf "/etc/netns/$a" "/etc/netns/$b" "$work"
}
trap cleanup EXIT INT TERM
if ! ip netns add "$a" 2>/dev/null; then echo "SKIP network namespaces are not permitted here"; exit 77; fi
ip netns add "$b"
ip link add "va$id" type veth peer name "vb$id"
for side in a b; do
    ns=$(eval echo \$$side); dev=v$side$id; last=$([ $side = a ] && echo 1 || echo 2)
    ip link set "$dev" netns "$ns"
    ip netns exec "$ns" sh -c "
        ip addr del 127.0.0.1/8 dev lo 2>/dev/null || true
        ip addr add 127.0.0.1/32 dev lo
        ip link set lo up
        sysctl -qw net.ipv4.conf.all.route_localnet=1
        sysctl -qw net.ipv4.conf.$dev.route_localnet=1
        ip addr add 127.77.$net.$last/24 dev $dev
        ip link set $dev up"
    mkdir -p "/etc/netns/$ns"
    printf '127.0.0.1 localhost\n127.77.%s.1 %s\n127.77.%s.2 %s\n' "$net" "$a" "$net" "$b" > "/etc/netns/$ns/hosts"
done
printf '%s slots=2\n%s slots=1\n' "$a" "$b" > "$work/hostfile"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_oob_tcp_if_include=127.77.$net.0/24 OMPI_MCA_btl_tcp_if_include=127.77.$net.0/24
export OMPI_MCA_hwloc_base_binding_policy=none OMPI_MCA_rmaps_base_oversubscribe=1
set +e
ip netns exec "$a" unshare --uts sh -c "hostname $a; exec mpirun --hostfile $work/hostfile --mca plm_rsh_agent '$0 --agent' -n $count \"\$@\"" sh "$@"
status=$?
exit $status
