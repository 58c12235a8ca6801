fn main() -> std::process::ExitCode {
    orgkeeper::cli::main()
}
