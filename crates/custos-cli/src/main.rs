//! The `custos` binary.

fn main() -> std::process::ExitCode {
    custos_cli::run()
}
