# imds-observer on every Nomad client without Docker: a system job that runs
# the static binary with the raw_exec driver.
#
#   nomad job run deploy/nomad/imds-observer-exec.nomad.hcl
#
# raw_exec runs the binary in the host's namespaces, as the user the Nomad
# client runs as (root on a usual client install), with no filesystem
# isolation: the observer sees the host's /sys/fs/cgroup, /sys/kernel/btf
# and routes directly, and needs nothing mounted. It is started through
# setpriv (util-linux) as uid and gid 65534 (nobody), no supplementary
# groups, with CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYSLOG (the
# capabilities the DaemonSet has; the last given up once /proc/kallsyms is
# read at start) as ambient capabilities and every other one gone from the
# bounding set, no new privileges: it owns no file of the host, and cannot
# load a kernel module, read other processes' memory or bypass file
# permissions. As nobody it cannot create /run/imds-observer, or its lock
# file in it: where that directory exists and nobody may read it (0755, as
# the kubelet or Docker make it) it locks the directory itself; else it
# warns and takes an abstract socket instead (a process on the host network
# could take it first; a system job runs one allocation per client anyway).
#
# Client configuration this job needs:
#
#   plugin "raw_exec" {
#     config {
#       enabled = true
#     }
#   }
#
# On kernels 5.8 to 5.10, BPF maps count against RLIMIT_MEMLOCK, which the
# task inherits from the Nomad client: run the client with
# LimitMEMLOCK=infinity in its systemd unit there.
#
# The binary is expected at /usr/local/bin/imds-observer on every client
# (install it with your configuration management: it is one static file).
# Nomad can also fetch it; see the artifact example in the task.
job "imds-observer" {
  type = "system"
  # "*" needs Nomad 1.5+; list your datacenters on older servers.
  datacenters = ["*"]
  priority    = 90

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

    restart {
      attempts = 10
      interval = "30m"
      delay    = "15s"
      mode     = "delay"
    }

    task "imds-observer" {
      driver = "raw_exec"

      config {
        command = "/usr/bin/setpriv"
        args = [
          "--reuid=65534",
          "--regid=65534",
          "--clear-groups",
          "--bounding-set=-all,+bpf,+perfmon,+net_admin,+syslog",
          "--inh-caps=-all,+bpf,+perfmon,+net_admin,+syslog",
          "--ambient-caps=-all,+bpf,+perfmon,+net_admin,+syslog",
          "--no-new-privs",
          "--",
          "/usr/local/bin/imds-observer", "run", "--metrics-addr", "${NOMAD_ADDR_metrics}",
        ]
      }

      # Example only: nothing is downloaded as written. To have Nomad fetch
      # the binary instead of installing it on each client, uncomment, point
      # source at your own copies (one per architecture, named by Nomad's
      # cpu.arch: amd64, arm64; each with a sha256sum file beside it), and
      # run "local/imds-observer" in args above.
      #
      # artifact {
      #   source      = "https://example.com/imds-observer/0.1.0/imds-observer-${attr.cpu.arch}"
      #   destination = "local/imds-observer"
      #   mode        = "file"
      #   options {
      #     checksum = "file:https://example.com/imds-observer/0.1.0/imds-observer-${attr.cpu.arch}.sha256"
      #   }
      # }

      env {
        NODE_NAME = "${node.unique.name}"
        # Allocation -> job, task group and namespace from the Nomad HTTP
        # API (exec/raw_exec/java tasks' cgroup paths name only the
        # allocation and task), and this node's instance id for the fixes.
        # With ACLs, a token whose policy has read-job on the namespaces and
        # agent and node read (docs/deploy.md), better from a template block
        # than written here; for https also NOMAD_CACERT.
        # NOMAD_ADDR = "http://127.0.0.1:4646"
        # NOMAD_TOKEN = "..."
      }

      # Sizing: see "Sizing" in docs/deploy.md. For the scheduler these
      # reserve capacity; how far raw_exec enforces them depends on the
      # Nomad version and the client's cgroups.
      resources {
        cpu    = 50  # MHz
        memory = 128 # MiB
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
