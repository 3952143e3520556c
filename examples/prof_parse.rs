fn main() {
    let path = std::env::args().nth(1).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let sops = std::env::args().nth(2).unwrap();
    let sb = std::fs::read(&sops).unwrap();
    let n = 200;
    let t = std::time::Instant::now();
    for _ in 0..n {
        let m = sops_install_secrets::manifest::Manifest::parse(&bytes, None).unwrap();
        std::hint::black_box(m);
    }
    println!("manifest parse: {:?}", t.elapsed() / n);
    let t = std::time::Instant::now();
    for _ in 0..n {
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        std::hint::black_box(v);
    }
    println!("serde_json Value: {:?}", t.elapsed() / n);
    let t = std::time::Instant::now();
    for _ in 0..n {
        let f = sops_install_secrets::sops::EncryptedFile::parse_owned(
            sb.clone(),
            sops_install_secrets::sops::Format::Yaml,
        )
        .unwrap();
        std::hint::black_box(f);
    }
    println!("sops yaml parse (one file): {:?}", t.elapsed() / n);
}
