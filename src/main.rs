use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Two TLS crypto providers get compiled in (through reqwest and lapin);
    // choose one for the whole process. Failing means one is already set.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = bora::cli::Cli::parse();
    match bora::cli::run(cli).await {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("bora: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
