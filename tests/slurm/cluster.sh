#!/bin/bash
# A throw-away single-node Slurm on localhost, for the tests in tests/slurm.
#
#   tests/slurm/cluster.sh start DIR   install Debian's slurm/munge if missing, write a config
#                                      under DIR, start munged, slurmctld and slurmd, wait
#                                      until the node is idle; prints DIR/slurm.conf
#   tests/slurm/cluster.sh stop DIR    stop the daemons started in DIR (by their pid files)
#
# Clients find the cluster with SLURM_CONF=DIR/slurm.conf. Runs as root, no systemd.
# The node has 2 fake GPUs (gres/gpu on device nodes DIR/dev/nvidia0-1, no hardware).
# Ports are picked free, so several clusters (CI sessions) can share one machine.
# Exit status 0: running. Anything else: not available, with the reason on stderr.
set -euo pipefail

action=${1:?usage: cluster.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: cluster.sh start|stop DIR}")
WAIT_SECONDS=${SLURM_TEST_WAIT:-60}

die() { echo "cluster.sh: $*" >&2; exit 1; }

stop() {  # all three told at once, then each given up to 5 s: ~2 s in all, not ~6
    local name pid pids=()
    for name in slurmd slurmctld munged; do
        [ -f "$dir/$name.pid" ] || continue
        pid=$(cat "$dir/$name.pid")
        kill "$pid" 2>/dev/null || true
        pids+=("$pid")
        rm -f "$dir/$name.pid"
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
}

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v sbatch >/dev/null && command -v munged >/dev/null && return 0
    [ "$(id -u)" -eq 0 ] || die "slurm is not installed and installing it needs root"
    command -v apt-get >/dev/null || die "slurm is not installed and there is no apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurmctld slurmd slurm-client munge >"$dir/apt.log" 2>&1 || {
        apt-get update -q >>"$dir/apt.log" 2>&1 &&
            apt-get install -y -q slurmctld slurmd slurm-client munge >>"$dir/apt.log" 2>&1
    } || die "apt-get install slurmctld slurmd slurm-client munge failed (see $dir/apt.log)"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

configure() {
    local host node port_ctld port_d
    host=$(hostname -s)
    # slurmd -C: "NodeName=... CPUs=... RealMemory=..."; memory is left out (not enforced)
    node=$(slurmd -C | head -1 | sed -e 's/ RealMemory=[0-9]*//')
    port_ctld=$(free_port)
    port_d=$(free_port)
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge" "$dir/dev"
    # Two GPUs for Slurm to allocate (gres/gpu): device nodes with NVIDIA's major number
    # and no GPU behind them. Slurm sets CUDA_VISIBLE_DEVICES from them as on a GPU
    # node; nothing opens them (the tests score with the CPU provider). Without them
    # (mknod refused) the node has none, and DIR/gpus says why.
    gres="" gres_types=""
    rm -f "$dir/dev/nvidia0" "$dir/dev/nvidia1" "$dir/gres.conf"
    if mknod "$dir/dev/nvidia0" c 195 0 2>"$dir/gpus" && mknod "$dir/dev/nvidia1" c 195 1 \
            2>>"$dir/gpus"; then
        echo 2 >"$dir/gpus"
        echo "Name=gpu File=$dir/dev/nvidia[0-1]" >"$dir/gres.conf"
        gres="Gres=gpu:2 " gres_types="GresTypes=gpu"
    fi
    chmod 711 "$dir" "$dir/munge"
    # Job ids from a random start: MPICH names its shared memory after the job and step
    # (/dev/shm/mpich_shm_*), and a segment a killed job left there would be taken up
    # by the same job id of the next test cluster, failing its MPI_Init (UCX: "invalid
    # bandwidth"). Below Slurm's default MaxJobId.
    first_job=$(( (RANDOM * 32768 + RANDOM) % 60000000 + 1000 ))
    cat >"$dir/slurm.conf" <<EOF
ClusterName=mpiscore-test
FirstJobId=$first_job
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port_ctld
SlurmdPort=$port_d
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$gres_types
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
JobRequeue=1
ReturnToService=2
KillWait=10
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
$node ${gres}NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    echo "$host" >"$dir/host"
}

start() {
    mkdir -p "$dir"
    stop  # a cluster left over in DIR
    install
    configure
    # munged refuses keys readable by others; its own key, not the system's
    dd if=/dev/urandom bs=1 count=1024 of="$dir/munge/munge.key" status=none
    chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" \
        --seed-file="$dir/munge/munge.seed" >"$dir/munged.out" 2>&1 ||
        die "munged did not start: $(tail -3 "$dir/munged.out" "$dir/munged.log" 2>/dev/null)"
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -f "$SLURM_CONF" -i >"$dir/slurmctld.out" 2>&1 ||
        die "slurmctld did not start: $(tail -5 "$dir/slurmctld.log" 2>/dev/null)"
    slurmd -f "$SLURM_CONF" >"$dir/slurmd.out" 2>&1 ||
        die "slurmd did not start: $(tail -5 "$dir/slurmd.log" 2>/dev/null)"
    local deadline=$((SECONDS + WAIT_SECONDS)) state=""
    while [ $SECONDS -lt $deadline ]; do
        state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
        [ "$state" = idle ] && { echo "$SLURM_CONF"; return 0; }
        sleep 0.5
    done
    stop
    die "the node did not become idle in ${WAIT_SECONDS}s (state: ${state:-none}); logs in $dir"
}

case $action in
    start) start ;;
    stop) stop ;;
    *) die "usage: cluster.sh start|stop DIR" ;;
esac
