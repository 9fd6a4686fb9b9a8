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
        .with_ansi(imds_observer::cli::log_colours(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .init();
    let cli = imds_observer::cli::Cli::parse_env();
    imds_observer::sys::memory::no_huge_pages();
    // The label keys every pod record keeps, chosen before any is made;
    // completions and man pages are generated from the command definition
    // (no runtime needed).
    let capture = match &cli.command {
        imds_observer::cli::Command::Run(a) => Some(&a.capture),
        imds_observer::cli::Command::Report(a) => Some(&a.capture),
        imds_observer::cli::Command::Tui(a) => Some(&a.capture),
        imds_observer::cli::Command::Completions { shell } => {
            imds_observer::cli::completions(*shell, &mut std::io::stdout().lock());
            return std::process::ExitCode::SUCCESS;
        }
        imds_observer::cli::Command::Man { command } => {
            return match imds_observer::cli::man_page(
                command.as_deref(),
                &mut std::io::stdout().lock(),
            ) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("imds-observer: {e}");
                    std::process::ExitCode::from(2)
                }
            };
        }
    };
    // Capturing needs the capabilities that the image's binary carries as
    // permitted file capabilities (docs/deploy.md, Privileges): made
    // effective first, while this is the only thread (threads inherit the
    // creating thread's sets), before they are checked. A recording
    // (`--from`) is read with none.
    let captures = match &cli.command {
        imds_observer::cli::Command::Report(a) => a.from.is_none(),
        imds_observer::cli::Command::Tui(a) => a.from.is_none(),
        _ => true,
    };
    if captures {
        match imds_observer::sys::caps::raise_permitted() {
            Ok(0) => {}
            Ok(raised) => tracing::debug!("permitted capabilities made effective: {raised:#x}"),
            Err(e) => tracing::warn!("making the permitted capabilities effective: {e}"),
        }
    }
    if let Some(keys) = capture.and_then(|c| c.pod_labels.as_ref()) {
        imds_observer::identity::pods::set_pod_labels(
            imds_observer::identity::pods::LabelKeys::parse(keys),
        );
    }
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
        imds_observer::cli::Command::Completions { .. }
        | imds_observer::cli::Command::Man { .. } => {
            unreachable!("handled above")
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
