#!/usr/bin/env bash
# tools/cluster/local_slurm.sh -- a throwaway Slurm cluster on this machine, one node or
# several, for tests and CI (Debian 12 "bookworm", Slurm 22.05, run as root).
#
# Usage:
#   tools/cluster/local_slurm.sh install  # apt-get the packages (idempotent, quiet)
#   tools/cluster/local_slurm.sh start    # write slurm.conf, start munged + slurmctld + slurmd,
#                                 # wait until the node is idle in partition "debug"
#   tools/cluster/local_slurm.sh start --nodes 2
#                                 # N nodes node1..nodeN, each slurmd in its own network
#                                 # namespace with its own address and hostname (see
#                                 # "Several nodes" below); also restarts a node's slurmd
#                                 # that died (e.g. killed by a test) and resumes the node
#   tools/cluster/local_slurm.sh exec node2 CMD [ARGS...]
#                                 # run CMD on node2 of a multi-node cluster (its network,
#                                 # hostname and /etc/hosts), e.g. one launcher per node
#   tools/cluster/local_slurm.sh kill-node node2
#                                 # SIGKILL every process of node2 (slurmd included), as a
#                                 # crash would; `start --nodes N` restarts it
#   tools/cluster/local_slurm.sh status   # sinfo + squeue
#   tools/cluster/local_slurm.sh stop     # scancel everything, stop the daemons, remove the
#                                 # namespaces, bridge and state dir (idempotent, works
#                                 # after a half-failed start)
#
# Environment:
#   SLURM_LOCAL_DIR   state, spool, pid and log files (default /tmp/local-slurm);
#                     `stop` deletes it.
#   LOCAL_SLURM_WAIT  seconds `start` waits for the node to become idle (default 60).
#   LOCAL_SLURM_CPUS  advertise this many CPUs instead of the real count (lets a
#                     2-core box run e.g. `srun -n 4`; uses SlurmdParameters=config_overrides).
#                     With --nodes N every node advertises this count (or the real one).
#   LOCAL_SLURM_SUBNET  first three octets of the private /24 of a multi-node cluster
#                     (default 10.213.0): .1 is the bridge (slurmctld), .(i+1) is node i.
#
# After `start`, plain sbatch/srun/squeue/scontrol work (the config is written to
# /etc/slurm/slurm.conf, Debian's compiled-in location). Logs: $SLURM_LOCAL_DIR/log/.
# There is no accounting database: use `scontrol show job` / `squeue`, not sacct.
# One cluster per machine (fixed ports 6817/6818, one /etc/slurm/slurm.conf);
# use the same SLURM_LOCAL_DIR for start and stop. `start` reuses a running
# cluster; tests/tools/test_local_slurm.py always stops it at the end.
# Finished jobs stay visible in `scontrol show job` for MinJobAge=300 s.
#
# Pitfalls found on a container/microVM without systemd (see notes inline):
#   * Debian's policy-rc.d / no systemd: the packages install but start nothing,
#     so munged, slurmctld and slurmd are started here by hand.
#   * munged must run as user "munge" and owns /etc/munge/munge.key (0400) and
#     /run/munge (0755, lost on reboot since /run is tmpfs); it is created here.
#   * cgroup plugins are not usable in a container: proctrack/linuxproc,
#     task/none, jobacct_gather/none. Nothing may reference cgroup.conf.
#   * SlurmUser=root and SlurmdUser=root so the daemons can write the state dir.
#   * slurmd needs no --conf-server because slurm.conf is on local disk (only a
#     "configless" setup needs it); it gets -N <node> so a hostname mismatch
#     cannot make it look for the wrong NodeName.
#   * NodeAddr/SlurmctldHost use 127.0.0.1 so nothing depends on DNS.
#   * PropagateResourceLimits=NONE: copying the submitter's rlimits into a job
#     can fail in a sandbox (e.g. RLIMIT_MEMLOCK), which only spams the logs.
#   * PID 1 of the sandbox reaps orphans slowly, so a daemon that exited stays
#     a zombie for a while and `kill -0` still succeeds: `stop` checks
#     /proc/PID/status for state Z instead (else stop took ~6 s, now ~1 s).
#   * A requeued job waits cred_expire (default 120 s) + one scheduler pass
#     (sched_interval, default 60 s) before it runs again: ~150 s measured with
#     defaults. AuthInfo=cred_expire=5 and sched_interval=2 bring it to ~6-7 s.
#
# Several nodes (`start --nodes N`, N >= 2), all on this one machine:
#   * A bridge `lslurm0` in the root namespace holds $SUBNET.1/24; slurmctld
#     runs in the root namespace and is reached at that address.
#   * Node i is the network namespace `lslurm-node<i>` (made with `ip netns`),
#     joined to the bridge by a veth pair (`lslurm-v<i>` outside, eth0 inside)
#     with address $SUBNET.(i+1); its slurmd runs there with `-N node<i>`, in
#     its own UTS namespace whose hostname is node<i> (so gethostname() and
#     everything a job starts see the node's name, as on a real cluster).
#   * Name resolution: /etc/netns/lslurm-node<i>/hosts (the machine's
#     /etc/hosts plus node1..nodeN), which `ip netns exec` bind-mounts over
#     /etc/hosts for that node only; the machine's /etc/hosts is not touched.
#   * The namespaces have no route but their /24: traffic stays between the
#     nodes and the bridge. They share the filesystem (one "shared" output
#     directory, one munged socket, one /etc/slurm/slurm.conf), the CPUs and
#     the memory: every node advertises the whole machine, so N nodes
#     oversubscribe it N times.
#   * `stop` kills whatever still runs in those namespaces, deletes them, the
#     bridge and /etc/netns/lslurm-node*; it does so by name, so it also cleans
#     up after a start that failed half-way or a state dir that was deleted.
#   * Restart of a node: `start --nodes N` on a running cluster of N nodes
#     restarts any node whose slurmd is dead and resumes it in Slurm.
#
# Pre-emption / requeue, as measured on a 2-core Debian 12 VM (Slurm 22.05.8):
#   * `#SBATCH --signal=B:USR1@N --time=M` reaches the batch shell N s before the
#     limit, but slurmctld checks time limits only every ~30 s: with --time=1
#     and @55 the signal came after 18-27 s instead of 5 s. Fine for one slow
#     end-to-end test, too coarse for many.
#   * Fast path: `scancel --signal=USR1 --batch JOBID` reaches the batch shell
#     in <0.1 s. `scontrol requeue JOBID` (from the job's own USR1 trap or from
#     outside) sends SIGTERM to the batch shell at once, puts the job back to
#     PENDING, and it reruns with SLURM_RESTART_COUNT=1 ~6-7 s later (output is
#     appended with --open-mode=append). `sbatch --wait` keeps waiting across
#     the requeue and returns the exit code of the final run.
#   * In bash, a trap runs only after the foreground command ends: wait with
#     `sleep 1 & wait $!` (or run the payload in the background and `wait`).
#
# Measured: install 16 s (4 packages + deps, downloaded, openmpi already
# present); start 0.1-0.4 s to an idle node; a trivial `sbatch --wait` 2.0 s
# round trip (sbatch polls); srun -n 2 0.2 s; stop ~1-1.5 s.
set -euo pipefail

SLURM_LOCAL_DIR="${SLURM_LOCAL_DIR:-/tmp/local-slurm}"
LOCAL_SLURM_WAIT="${LOCAL_SLURM_WAIT:-60}"
CONF=/etc/slurm/slurm.conf
MARKER="# managed by tools/cluster/local_slurm.sh"
CLUSTER=localslurm
# Several nodes: a bridge, one network namespace per node (names fixed, so that
# `stop` finds them without any state), addresses in a private /24.
SUBNET="${LOCAL_SLURM_SUBNET:-10.213.0}"
BRIDGE=lslurm0
NS_PREFIX=lslurm-node
NODES=1   # `start --nodes N`
# Every daemon we start carries this variable in its environment, so `stop`
# can find exactly our processes (and slurmstepd children) in /proc.
TAG="LOCAL_SLURM_TAG=${SLURM_LOCAL_DIR}"

log() { echo "local_slurm: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root"; }

# ---------------------------------------------------------------- install ---
PKGS=(slurmctld slurmd slurm-client munge openmpi-bin libopenmpi-dev iproute2)
# slurm-wlm is only a metapackage for slurmctld + slurmd + slurm-client; naming
# the three keeps the list explicit. slurm-wlm-basic-plugins comes as a dep.
# iproute2 (`ip`) builds the network of `start --nodes N`; nsenter and unshare
# come with util-linux, which every Debian system has.

cmd_install() {
    need_root
    local missing=() p t0
    t0=$(date +%s)
    for p in "${PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        echo "local_slurm install: all present ($(slurmctld -V 2>/dev/null || echo slurm?))"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Update the package lists only if apt cannot see a candidate for a package.
    if ! apt-cache policy "${missing[@]}" 2>/dev/null | grep -q "Candidate: [0-9]"; then
        apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed"
    fi
    # Quiet: the apt/dpkg chatter goes to a temp file, shown only on failure.
    local out
    out=$(mktemp)
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$out" 2>&1; then
        cat "$out" >&2; rm -f "$out"; die "apt-get install failed"
    fi
    rm -f "$out"
    echo "local_slurm install: installed ${missing[*]} in $(( $(date +%s) - t0 )) s ($(slurmctld -V))"
}

# ------------------------------------------------------------------ start ---
node_name() { hostname -s; }

# The node names of a cluster of N nodes: this host's name for one node (as
# before), node1..nodeN for several.
node_names() {
    local i
    if (($1 == 1)); then node_name; else for ((i = 1; i <= $1; i++)); do echo "node$i"; done; fi
}
node_ns() { echo "$NS_PREFIX${1#node}"; }              # node3 -> lslurm-node3
node_addr() { echo "$SUBNET.$((${1#node} + 1))"; }     # node3 -> $SUBNET.4
slurmd_pidfile() { echo "$SLURM_LOCAL_DIR/run/slurmd-$1.pid"; }   # SlurmdPidFile=...-%n.pid
running_nodes() { cat "$SLURM_LOCAL_DIR/run/nodes" 2>/dev/null || true; }

# `slurmd -C` prints the NodeName line for this machine (CPUs, Boards, Sockets,
# Cores, Threads, RealMemory). We keep its hardware fields, set our own name.
hw_line() {
    local line
    line=$(slurmd -C 2>/dev/null | grep '^NodeName=' | head -n1) \
        || die "slurmd -C failed (is slurmd installed? run: tools/cluster/local_slurm.sh install)"
    line=${line#NodeName=* }            # drop "NodeName=xxx "
    if [[ -n "${LOCAL_SLURM_CPUS:-}" ]]; then
        # Override the topology so that CPUs= is the only CPU count Slurm sees.
        line=$(sed -E 's/(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+ ?//g' <<<"$line")
        line="CPUs=${LOCAL_SLURM_CPUS} ${line}"
    fi
    echo "$line"
}

write_conf() {   # write_conf N
    local n=$1 hw d=$SLURM_LOCAL_DIR ctl_addr node node_lines="" part
    hw=$(hw_line)
    if ((n == 1)); then
        ctl_addr=127.0.0.1
        node=$(node_name)
        node_lines="NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN"
        part=$node
    else
        # slurmctld listens in the root namespace; the nodes reach it on the bridge.
        ctl_addr=$SUBNET.1
        for node in $(node_names "$n"); do
            node_lines+="${node_lines:+$'\n'}NodeName=$node NodeHostname=$node NodeAddr=$(node_addr "$node") $hw State=UNKNOWN"
        done
        part="node[1-$n]"
    fi
    if [[ -e $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to overwrite it"
    fi
    mkdir -p /etc/slurm
    cat >"$CONF" <<EOF
$MARKER (SLURM_LOCAL_DIR=$d); \`local_slurm.sh stop\` removes it.
ClusterName=$CLUSTER
SlurmctldHost=$(node_name)($ctl_addr)
# Daemons run as root in a sandbox; no slurm user/dirs to set up.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$d/state
# %n: the node name, so that the slurmd of every node has its own files.
SlurmdSpoolDir=$d/spool/%n
SlurmctldPidFile=$d/run/slurmctld.pid
SlurmdPidFile=$d/run/slurmd-%n.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in a container.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
PropagateResourceLimits=NONE
# No accounting database (no slurmdbd): sacct does not work, scontrol does.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# A requeued job may start again only after the credential lifetime
# (cred_expire, default 120 s) + the next scheduler pass (sched_interval,
# default 60 s). Short values make a requeue round trip take seconds, not minutes.
AuthInfo=cred_expire=5
SchedulerParameters=sched_interval=2,bf_interval=2
MailProg=/bin/true
MpiDefault=none
ReturnToService=2
# Jobs may be requeued (scontrol requeue, --requeue, pre-emption tests).
JobRequeue=1
SlurmctldTimeout=10
SlurmdTimeout=10
MessageTimeout=10
InactiveLimit=0
KillWait=5
MinJobAge=300
# Use the CPU count written below even where slurmd sees fewer (LOCAL_SLURM_CPUS).
SlurmdParameters=config_overrides
$node_lines
PartitionName=debug Nodes=$part Default=YES MaxTime=INFINITE State=UP
EOF
}

# The network of a multi-node cluster: bridge + one namespace and veth pair per node.
net_up() {   # net_up N
    local n=$1 node ns i
    net_down   # leftovers of an earlier, failed start
    ip link add "$BRIDGE" type bridge
    ip addr add "$SUBNET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for node in $(node_names "$n"); do
        ns=$(node_ns "$node"); i=${node#node}
        ip netns add "$ns"
        ip link add "lslurm-v$i" type veth peer name eth0 netns "$ns"
        ip link set "lslurm-v$i" master "$BRIDGE" up
        ip -n "$ns" addr add "$(node_addr "$node")/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        # `ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts for this node only.
        mkdir -p "/etc/netns/$ns"
        {
            cat /etc/hosts
            echo "$MARKER: the nodes of the local cluster"
            for i in $(node_names "$n"); do echo "$(node_addr "$i") $i"; done
        } >"/etc/netns/$ns/hosts"
    done
}

# Everything net_up made, found by name: also after a failed start or without a state dir.
net_down() {
    local ns pids
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NS_PREFIX[0-9]+\$" || true); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -n $pids ]] && kill -KILL $pids 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    # A deleted namespace takes its veth pairs with it only once the kernel has torn it down, which can
    # lag; delete the outside ends here (that removes both ends) and wait until none is listed.
    local link l tries=50
    while link=$(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^lslurm-v[0-9]+$'); do
        for l in $link; do ip link del "$l" 2>/dev/null || true; done
        (( --tries > 0 )) || break
        sleep 0.1
    done
    rm -rf /etc/netns/"$NS_PREFIX"[0-9]*
    ip link del "$BRIDGE" 2>/dev/null || true
}

# Run a command on node NODE of a multi-node cluster: in its network namespace, with its own hostname (a
# UTS namespace) and its own /etc/hosts (a mount namespace with the bind mount `ip netns exec` would make).
# Not `ip netns exec` itself: it also remounts /sys, hiding /sys/fs/cgroup, and slurmd 22.05 then fails
# "Unable to initialize cgroup plugin" although no cgroup plugin is configured. nsenter and unshare exec
# the command (no fork), so the caller's PID is the command's.
on_node() {   # on_node NODE CMD [ARGS...]
    local node=$1 ns
    shift
    ns=$(node_ns "$node")
    [[ $node =~ ^node[0-9]+$ && -e /run/netns/$ns ]] \
        || die "no node '$node' here (nodes are node1..nodeN of \`start --nodes N\`)"
    exec nsenter --net="/run/netns/$ns" unshare --mount --uts sh -c \
        'mount --bind "$2" /etc/hosts && hostname "$1" && shift 2 && exec "$@"' \
        sh "$node" "/etc/netns/$ns/hosts" "$@"
}

start_slurmd() {   # start_slurmd NODE N
    mkdir -p "$SLURM_LOCAL_DIR/spool/$1"   # SlurmdSpoolDir=.../spool/%n
    if (($2 == 1)); then
        env "$TAG" slurmd -N "$1"
    else
        (on_node "$1" env "$TAG" slurmd -N "$1")   # slurmd daemonizes; the subshell returns at once
    fi
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then
        log "munged already running; using it"
        return 0
    fi
    # The key: Debian's postinst normally creates it; make one if it is missing.
    mkdir -p /etc/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key >/dev/null
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    # munged refuses a key or dirs that are group/world accessible or owned by
    # another user; /run/munge is on tmpfs and vanishes at reboot.
    chown munge:munge /etc/munge /etc/munge/munge.key
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    env "$TAG" runuser -u munge -- /usr/sbin/munged
    touch "$SLURM_LOCAL_DIR/run/we-started-munged"
    local i
    for i in $(seq 50); do munge_ok && return 0; sleep 0.1; done
    die "munged did not come up (see /var/log/munge/munged.log)"
}

node_state() { sinfo -h -n "$1" -o '%t' 2>/dev/null | head -n1; }

dump_logs() {
    local f
    for f in "$SLURM_LOCAL_DIR"/log/*.log; do
        [[ -f $f ]] || continue
        log "---- tail $f"
        tail -n 20 "$f" >&2
    done
}

cmd_start() {
    need_root
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null \
        || die "Slurm/munge not installed; run: tools/cluster/local_slurm.sh install"
    if ((NODES > 1)); then
        command -v ip >/dev/null && command -v unshare >/dev/null && command -v nsenter >/dev/null \
            || die "--nodes $NODES needs ip (iproute2), unshare and nsenter (util-linux)"
    fi
    [[ $SUBNET =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] \
        || die "LOCAL_SLURM_SUBNET='$SUBNET': want the first three octets of a private /24, e.g. 10.213.0"
    local node t0 st i up=0 nodes running
    nodes=$(node_names "$NODES")
    t0=$EPOCHREALTIME
    running=$(running_nodes)
    # Already up (same SLURM_LOCAL_DIR)? Then restart a node's dead slurmd (a test may have killed a
    # node) and wait for the nodes below; the config is not rewritten (run stop + start to change it).
    if [[ -n $running && -f $SLURM_LOCAL_DIR/run/slurmctld.pid ]] \
        && alive "$(cat "$SLURM_LOCAL_DIR/run/slurmctld.pid")"; then
        [[ $running == "$NODES" ]] \
            || die "a cluster of $running node(s) is running (SLURM_LOCAL_DIR=$SLURM_LOCAL_DIR); run stop first"
        log "already running (SLURM_LOCAL_DIR=$SLURM_LOCAL_DIR); reusing it"
        for node in $nodes; do
            alive "$(cat "$(slurmd_pidfile "$node")" 2>/dev/null || echo x)" && continue
            log "slurmd of $node is not running; restarting it"
            start_slurmd "$node" "$NODES" || { dump_logs; die "slurmd of $node failed to start"; }
        done
    else
        # Clean up anything a half-failed earlier start left behind (for several nodes: always, since
        # namespaces may outlive the state dir).
        if [[ -d $SLURM_LOCAL_DIR ]] || ((NODES > 1)); then cmd_stop >/dev/null; fi
        mkdir -p "$SLURM_LOCAL_DIR"/{state,spool,run,log}
        echo "$NODES" >"$SLURM_LOCAL_DIR/run/nodes"
        write_conf "$NODES"
        # (Not `net_up || die`: a function called left of || runs with errexit off.)
        if ((NODES > 1)); then net_up "$NODES"; fi
        start_munge
        # All daemonize; -c -i: start from clean state (the dir is fresh anyway).
        env "$TAG" slurmctld -c -i || { dump_logs; die "slurmctld failed to start"; }
        for node in $nodes; do
            start_slurmd "$node" "$NODES" || { dump_logs; die "slurmd of $node failed to start"; }
        done
    fi
    # Wait (bounded) for every node to be idle; resume one that registered down/drained.
    for ((i = 0; i < LOCAL_SLURM_WAIT * 4; i++)); do
        up=0
        for node in $nodes; do
            st=$(node_state "$node" || true)
            case "$st" in
                idle|mix|alloc|comp) up=$((up + 1)) ;;   # up (mix/alloc: a reused cluster has jobs)
                down*|drain*|drng*|inval*|fail*)
                    scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
            esac
        done
        ((up == NODES)) && break
        sleep 0.25
    done
    if ((up != NODES)); then
        dump_logs
        die "only $up of $NODES node(s) idle after ${LOCAL_SLURM_WAIT}s ($(sinfo -h -N -o '%N %t' 2>/dev/null | tr '\n' ' '))"
    fi
    printf 'local_slurm start: node(s) %s up in partition debug after %.1f s (%s)\n' \
        "$(echo $nodes | tr ' ' ,)" "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{print b-a}')" "$(hw_line)"
}

# ------------------------------------------------------------------- stop ---
# PIDs of processes carrying our tag or belonging to jobs of our cluster.
tagged_pids() {
    local p e
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [[ $p == "$$" || $p == "$BASHPID" || $p == "$PPID" ]] && continue
        e=$(tr '\0' '\n' 2>/dev/null <"/proc/$p/environ") || continue
        if grep -qxF "$TAG" <<<"$e" || grep -qx "SLURM_CLUSTER_NAME=$CLUSTER" <<<"$e"; then
            echo "$p"
        fi
    done
}

# A process counts as gone once it is a zombie: in a container PID 1 may be
# slow to reap (or never reap) orphaned daemons, and `kill -0` succeeds on zombies.
alive() {
    [[ -r /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

kill_pidfile() {   # kill_pidfile FILE: SIGTERM, wait up to 10 s, then SIGKILL
    local f=$1 pid i
    [[ -f $f ]] || return 0
    pid=$(cat "$f" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do alive "$pid" || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

cmd_stop() {
    need_root
    local d=$SLURM_LOCAL_DIR ids i left f
    # 1. Cancel all jobs while the controller is still up (bounded).
    if [[ -f $d/run/slurmctld.pid ]] && alive "$(cat "$d/run/slurmctld.pid" 2>/dev/null)"; then
        ids=$(timeout 15 squeue -h -o '%i' 2>/dev/null || true)
        if [[ -n $ids ]]; then
            timeout 15 scancel $ids 2>/dev/null || true
            for i in $(seq 40); do
                [[ -z $(timeout 5 squeue -h -o '%i' 2>/dev/null || true) ]] && break
                sleep 0.25
            done
        fi
    fi
    # 2. Stop the daemons: slurmd first, then slurmctld, then munged (only if we started it).
    for f in "$d"/run/slurmd-*.pid; do kill_pidfile "$f"; done
    kill_pidfile "$d/run/slurmctld.pid"
    if [[ -f $d/run/we-started-munged ]]; then
        kill_pidfile /run/munge/munged.pid
    fi
    # 3. Leftovers: anything still carrying our tag (slurmstepd, a daemon whose
    #    pid file never got written) or running a job of this cluster.
    left=$(tagged_pids)
    if [[ -n $left ]]; then
        kill -TERM $left 2>/dev/null || true
        sleep 1
        left=$(tagged_pids)
        [[ -n $left ]] && kill -KILL $left 2>/dev/null || true
    fi
    # 4. The namespaces of a multi-node cluster (and anything still running in them), the bridge.
    net_down
    # 5. Remove our config and state.
    if [[ -f $CONF ]] && grep -qF "$MARKER" "$CONF"; then rm -f "$CONF"; fi
    rm -rf "$d"
    echo "local_slurm stop: stopped; removed $d"
}

# -------------------------------------------------------------- kill-node ---
# What a crash does to a node's processes: SIGKILL to everything in its namespace (slurmd, slurmstepd, job
# tasks). The other nodes' TCP peers see the connections reset at once; slurmctld marks the node DOWN
# after SlurmdTimeout. `start --nodes N` brings it back.
cmd_kill_node() {
    local ns pids
    ns=$(node_ns "$1")
    [[ $1 =~ ^node[0-9]+$ && -e /run/netns/$ns ]] || die "no node '$1' here"
    pids=$(ip netns pids "$ns")
    [[ -n $pids ]] && { kill -KILL $pids 2>/dev/null || true; }   # one may have exited meanwhile
    echo "local_slurm kill-node: killed $(wc -w <<<"$pids") process(es) on $1"
}

# ----------------------------------------------------------------- status ---
cmd_status() {
    if [[ ! -f $CONF ]]; then
        echo "local_slurm status: not running (no $CONF)"
        return 1
    fi
    timeout 15 sinfo || return 1
    timeout 15 squeue
}

case "${1:-}" in
    install) cmd_install ;;
    start)
        shift
        while (($#)); do
            case "$1" in
                --nodes) NODES=${2:-}; shift 2 || die "--nodes needs a number" ;;
                --nodes=*) NODES=${1#--nodes=}; shift ;;
                *) die "start: unknown argument '$1' (usage: start [--nodes N])" ;;
            esac
        done
        [[ $NODES =~ ^[1-9][0-9]?$ ]] && ((NODES <= 16)) || die "--nodes '$NODES': a number from 1 to 16"
        cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    exec) need_root; shift; (($# >= 2)) || die "usage: exec NODE COMMAND [ARGS...]"; on_node "$@" ;;
    kill-node) need_root; (($# == 2)) || die "usage: kill-node NODE"; cmd_kill_node "$2" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
