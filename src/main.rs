use clap::Parser;
use perpetual::cli::{self, Cli, Exit, LogFormat, UsageError};
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc malloc: the ingest allocates and frees a `Value` tree
/// and row buffers for every pair on two threads; BENCHMARKS.md (seventh sitting)
/// has the figures, and the resident-memory cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`perpetual files | head`) like other Unix tools.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("perpetual={}", cli.default_log_level())));
    let writer = match cli.log_writer() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("perpetual: error: {e:#}");
            return ExitCode::from(Exit::Error as u8);
        }
    };
    let to_file = matches!(&cli.command, perpetual::cli::Command::Run(a) if a.log_dir.is_some());
    // Colours only for a person at a terminal, and never when NO_COLOR is set
    // (https://no-color.org: present and not empty), nor in the loop's log files.
    let colour = !to_file
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(writer);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_target(false).init(),
    }
    let exit = match cli::run(cli) {
        Ok(exit) => exit,
        Err(e) if is_broken_pipe(&e) => Exit::Ok,
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("perpetual: error: {e:#}");
            Exit::Usage
        }
        Err(e) => {
            eprintln!("perpetual: error: {e:#}");
            Exit::Error
        }
    };
    ExitCode::from(exit as u8)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
