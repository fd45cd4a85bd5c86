use std::process::ExitCode;

use clap::Parser;

use almavmm_host::{cli::Cli, exit, ui};

fn main() -> ExitCode {
    let cli = Cli::parse();
    ui::init_logging(cli.verbose, cli.quiet);
    match cli.command.run() {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            ui::print_error(&err);
            ExitCode::from(exit::code_for(&err))
        }
    }
}
