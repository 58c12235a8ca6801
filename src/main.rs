/// mimalloc rather than the system allocator: a proxied request allocates and frees a few dozen small
/// objects (headers, buffers, futures), and glibc's malloc measured as a sixth of the sidecar's user-space
/// CPU on the forwarding path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    orgkeeper::cli::main()
}
