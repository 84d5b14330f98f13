use std::process::ExitCode;

use clap::Parser;

use splitvm::cli::{Cli, Command};

fn main() -> ExitCode {
    splitvm::startup::mark_main();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
            }
            // One line, no usage dump.
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!("splitvm: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    splitvm::logger::install(cli.log_level);
    match cli.command {
        Command::Run(args) => match std::panic::catch_unwind(|| splitvm::vmm::run(&args)) {
            Ok(Ok(status)) => ExitCode::from(status.clamp(0, 255) as u8),
            // The panic hook printed the line; the status is documented.
            Err(_) => ExitCode::from(if args.command_mode() {
                devices::control::command_status::SPLITVM_ERROR as u8
            } else {
                devices::ExitReason::InternalError(String::new()).status() as u8
            }),
            Ok(Err(e)) => {
                eprintln!("splitvm: {e}");
                // With `-- CMD`, 2 could be the command's own status.
                ExitCode::from(if args.command_mode() {
                    devices::control::command_status::SPLITVM_ERROR as u8
                } else {
                    2
                })
            }
        },
        Command::Paths(args) => match splitvm::paths::run(&args) {
            Ok(status) => ExitCode::from(status as u8),
            Err(e) => {
                eprintln!("splitvm: {e}");
                ExitCode::from(2)
            }
        },
        Command::Report(args) => match splitvm::picture::run(&args) {
            Ok(status) => ExitCode::from(status as u8),
            Err(e) => {
                eprintln!("splitvm report: {e}");
                ExitCode::from(1)
            }
        },
        Command::Top(args) => match splitvm::top::run(&args) {
            Ok(status) => ExitCode::from(status as u8),
            Err(e) => {
                eprintln!("splitvm top: {e}");
                ExitCode::from(1)
            }
        },
        Command::Test(args) => match splitvm::runner::run(&args) {
            Ok(status) => ExitCode::from(status as u8),
            Err(e) => {
                eprintln!("splitvm: {e}");
                ExitCode::from(2)
            }
        },
    }
}
