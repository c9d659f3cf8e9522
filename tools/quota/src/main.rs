//! `sfn-pacer-quota`: shows and changes the shared StartExecution budget (work in progress).

fn main() {
    eprintln!("sfn-pacer-quota: not built yet");
    std::process::exit(2);
}
