//! Prints what `sluice_bounce::parse` reads from each file given.
fn main() {
    for path in std::env::args().skip(1) {
        let raw = std::fs::read(&path).expect("readable file");
        println!("{path}: {:#?}", sluice_bounce::parse(&raw));
    }
}
