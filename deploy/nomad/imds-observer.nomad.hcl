# imds-observer on every Nomad client with Docker: a system job.
#
#   nomad job run deploy/nomad/imds-observer.nomad.hcl
#
# Client configuration this job needs (in the client's agent config), since
# the docker driver by default grants none of these capabilities and mounts
# no host paths:
#
#   plugin "docker" {
#     config {
#       # cap_add below must be a subset of allow_caps (Nomad's default list
#       # has none of the four). Keep the default ones your other jobs use.
#       allow_caps = ["audit_write", "chown", "dac_override", "fowner", "fsetid",
#                     "kill", "mknod", "net_bind_service", "setfcap", "setgid",
#                     "setpcap", "setuid", "sys_chroot",
#                     "bpf", "perfmon", "net_admin", "syslog"]
#       # Bind mounts of host paths (/sys/fs/cgroup, /sys/kernel/btf, /run).
#       volumes {
#         enabled = true
#       }
#       # Only for the privileged alternative below:
#       # allow_privileged = true
#     }
#   }
#
# Docker Engine 23.0 or later: 20.10 rejects the capability names BPF and
# PERFMON ("unknown capability"). On such a host use the privileged
# alternative, or cap_add = ["sys_admin", "net_admin"] (CAP_SYS_ADMIN stands
# in for CAP_BPF and CAP_PERFMON; allow_caps must then list sys_admin).
job "imds-observer" {
  type        = "system"
  # "*" needs Nomad 1.5+; list your datacenters on older servers.
  datacenters = ["*"]
  # Schedule it ahead of ordinary work when a client is full.
  priority = 90

  # Linux clients of the architectures the observer is built for: amd64
  # (x86_64-unknown-linux-musl) and arm64 (aarch64-unknown-linux-musl, Graviton).
  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }
  constraint {
    attribute = "${attr.cpu.arch}"
    operator  = "regexp"
    value     = "^(amd64|arm64)$"
  }

  group "imds-observer" {
    network {
      mode = "host"
      port "metrics" {
        static = 9109
      }
    }

    # Restart in place; a system job has no other node to move to.
    restart {
      attempts = 10
      interval = "30m"
      delay    = "15s"
      mode     = "delay"
    }

    task "imds-observer" {
      driver = "docker"
      # Not root: uid 65534 (nobody), as in the DaemonSet. Docker puts a
      # non-root container's added capabilities in its bounding set only;
      # the image's binary takes them up through its file capabilities
      # (docs/deploy.md, Privileges). Not on a dockerd configured with
      # "no-new-privileges": there no_new_privs voids those, and the
      # observer exits saying so; remove this line to run as root there.
      user = "65534"

      config {
        image = "ghcr.io/imds-observer/imds-observer:0.1.0"
        args  = ["run", "--metrics-addr", "${NOMAD_ADDR_metrics}"]

        # The tc programs attach to the host's uplinks, and the routes the
        # observer asks the kernel for must be the host's.
        network_mode = "host"
        ports        = ["metrics"]

        # On cgroup v1 clients (Amazon Linux 2) add pid_mode = "host", so that
        # containers are named through their veth's network namespace
        # (docs/deploy.md, "cgroup v1 nodes").

        readonly_rootfs = true

        # Least privilege: CAP_BPF (load programs, maps), CAP_PERFMON (the
        # tracing program reads kernel memory), CAP_NET_ADMIN (attach the
        # cgroup and tc programs). Linux 5.8+.
        cap_drop = ["all"]
        # CAP_SYSLOG: /proc/kallsyms's addresses, read once at start to name
        # where the kernel drops packets (the only drop evidence before
        # 5.17), then given up.
        cap_add  = ["bpf", "perfmon", "net_admin", "syslog"]

        # Alternative when allow_caps cannot be changed but privileged
        # containers are allowed (allow_privileged = true on the client):
        # delete cap_drop and cap_add above and set
        #   privileged = true

        # Kernels 5.8 to 5.10 charge BPF maps to RLIMIT_MEMLOCK; the ring
        # buffer alone is 4 MiB. Unlimited here, harmless on 5.11+.
        ulimit {
          memlock = "-1"
        }

        # The host's cgroup2 tree (the cgroup programs attach at its root;
        # cgroup ids are resolved to paths below it). Docker bind mounts are
        # recursive, so /sys/fs/cgroup/unified comes along on hybrid hosts.
        mount {
          type     = "bind"
          source   = "/sys/fs/cgroup"
          target   = "/sys/fs/cgroup"
          readonly = true
        }

        # Kernel BTF, read at start (sk_buff offsets, drop-reason names).
        mount {
          type     = "bind"
          source   = "/sys/kernel/btf"
          target   = "/sys/kernel/btf"
          readonly = true
        }

        # The instance lock's directory (one observer per node, also across
        # an update). Docker creates it when missing, root's and 0755: the
        # observer, not root, locks the directory itself; no other task can
        # hold that lock unless it mounts this host directory.
        volumes = ["/run/imds-observer:/run/imds-observer"]

        # Off by default: the Docker Engine API socket, for container names,
        # images and the com.hashicorp.nomad.* labels of Docker tasks.
        # Read-only does not restrict what the API allows: the socket is root
        # on the host. Without it the observer names containers from their
        # cgroup paths and allocations from the Nomad API (env below). To
        # add it, mount that one socket and nothing else of the host's /run.
        # With dockerd's live-restore, a dockerd restart leaves this mount on
        # the old socket: lookups fail (a warning) until the task restarts.
        # The socket is root's and the docker group's: as uid 65534 the
        # observer also needs group_add = ["<that group's gid>"].
        #   mount {
        #     type     = "bind"
        #     source   = "/run/docker.sock"
        #     target   = "/run/docker.sock"
        #     readonly = true
        #   }
      }

      env {
        NODE_NAME = "${node.unique.name}"
        # Allocation -> job, task group and namespace from the Nomad HTTP
        # API, for exec/raw_exec/java tasks (the cgroup path names only the
        # allocation and task) and Docker tasks whose labels are out of
        # reach, and this node's instance id for the fixes: point the
        # observer at the local agent. With ACLs, give it a token whose
        # policy has read-job on the namespaces and agent and node read
        # (docs/deploy.md),
        # e.g. from Variables or Vault in a template block rather than here.
        # For https also NOMAD_CACERT (and NOMAD_CLIENT_CERT/KEY for mTLS).
        # NOMAD_ADDR = "http://${attr.unique.network.ip-address}:4646"
        # NOMAD_TOKEN = "..."
      }

      # Sizing: see "Sizing" in docs/deploy.md. memory_max is the hard limit
      # only where memory oversubscription is enabled; elsewhere memory is.
      resources {
        cpu        = 50  # MHz
        memory     = 128 # MiB
        memory_max = 256 # MiB
      }

      service {
        name     = "imds-observer"
        provider = "nomad"
        port     = "metrics"
        tags     = ["metrics", "prometheus"]

        check {
          name     = "healthz"
          type     = "http"
          path     = "/healthz"
          interval = "20s"
          timeout  = "2s"
        }
      }

      # SIGTERM detaches every program; give it a moment.
      kill_timeout = "10s"
    }
  }
}
