fn main() -> std::process::ExitCode {
    humanline::cli::main()
}
