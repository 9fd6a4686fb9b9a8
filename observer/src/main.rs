//! The `imds-observer` command: logging, the runtime, and the subcommand.

/// Not musl's (the static build's): see sys/memory.rs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = imds_observer::cli::Cli::parse_env();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("imds-observer: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = match cli.command {
        imds_observer::cli::Command::Run(args) => {
            // While this is the only thread (capabilities are per thread).
            imds_observer::capture::kallsyms::Locations::preload();
            rt.block_on(imds_observer::run::run(args)).map(|()| 0)
        }
        imds_observer::cli::Command::Report(args) => rt.block_on(imds_observer::run::report(args)),
        imds_observer::cli::Command::Tui(args) => {
            rt.block_on(imds_observer::tui::main(args)).map(|()| 0)
        }
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("imds-observer: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
