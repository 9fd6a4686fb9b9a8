#!/bin/bash
# pid 1 of a matrix guest, after init's switch_root: mount what the
# observer and the lab need, load the modules the lab uses, then (below,
# written by xtask) run the tests. Output goes to $imds_out (the second
# serial port, or a virtio console), which xtask reads; the last line is `vm-exit: <status>`.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
stty -F "$imds_out" raw -echo 2>/dev/null
exec >"$imds_out" 2>&1
finish() {
    echo "vm-exit: $1"
    sync
    echo o >/proc/sysrq-trigger
    sleep 60
}
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup || finish 97
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
hostname "vm-$(uname -r | cut -d- -f1)"
ip link set lo up
for m in veth bridge sch_ingress cls_bpf act_bpf nf_conntrack iptable_nat iptable_filter xt_MASQUERADE xt_conntrack; do
    modprobe -q -d "$imds_kroot" "$m" || echo "guest: no module $m"
done
echo "guest: kernel $(uname -r), $(nproc) cpus"
