//! The `rebilly-webhookd` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    rebilly_webhookd::cli::main()
}
