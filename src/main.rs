//! The `bora` executable: parses the command line, builds the runtime the
//! command needs, and runs it through the library ([`bora::cli::run`]).

#![warn(clippy::unwrap_used, clippy::undocumented_unsafe_blocks)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Two TLS crypto providers get compiled in (through reqwest and lapin);
    // choose one for the whole process. Failing means one is already set.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = bora::cli::Cli::parse();
    let runtime = match cli.command.runtime() {
        bora::cli::RuntimeKind::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        bora::cli::RuntimeKind::MultiThread => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bora: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bora::cli::run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("bora: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
