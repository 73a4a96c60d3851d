fn main() {
    println!("endsys-bootstrap");
}
