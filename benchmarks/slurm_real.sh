#!/usr/bin/env bash
# The SLURM tests against the real scheduler: a one-host cluster (Debian's slurm-wlm 22.05: slurmctld
# and one slurmd, munge for authentication, no slurmdbd) started here, then tests/test_slurm.py's
# one-node cases with the real sbatch/srun/scontrol on PATH instead of the stand-in.
#   sudo benchmarks/slurm_real.sh            (root: it installs packages and starts daemons)
# Without slurmdbd there is no accounting: sacct fails and submitit says "Bypassing sacct error",
# then learns that a job ended from the result file the job writes, which is enough for these
# tests. One host runs one slurmd, so the two-node case stays with the stand-in.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v slurmctld >/dev/null || apt-get install -y -q slurm-wlm munge >/dev/null
HOST=$(hostname)
CPUS=$(nproc)
MEM=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge /var/spool/slurmd /var/spool/slurmctld
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=local
SlurmctldHost=${HOST}
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
NodeName=${HOST} CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
mkdir -p /var/log/slurm
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 1 30); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo
srun -N1 hostname
SLURM_REAL=1 OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:randomly tests/test_slurm.py \
  -k "requeued or one_node" --durations=5
