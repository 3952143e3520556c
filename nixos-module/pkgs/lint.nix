# lint: the package's source through `cargo fmt --check` and clippy with
# warnings as errors (what CI runs before the tests); the build fails on a
# finding. Nothing is installed.
{
  sops-install-secrets,
  clippy,
  rustfmt,
}:

sops-install-secrets.overrideAttrs (old: {
  pname = "sops-install-secrets-lint";
  nativeBuildInputs = old.nativeBuildInputs ++ [
    clippy
    rustfmt
  ];
  buildPhase = ''
    runHook preBuild
    cargo fmt --check
    cargo clippy --all-targets --locked --offline -- -D warnings
    runHook postBuild
  '';
  doCheck = false;
  installPhase = ''
    touch $out
  '';
  dontFixup = true;
})
