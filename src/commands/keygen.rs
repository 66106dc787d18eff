//! `kiln keygen`: a new signing key pair. The private key is only ever written to its file.

use anyhow::Context as _;
use kiln_attest::PrivateKey;

use super::Ctx;
use crate::cli::KeygenArgs;

pub fn run(ctx: &Ctx, args: &KeygenArgs) -> anyhow::Result<()> {
    let mut private = args.out.clone().into_os_string();
    private.push(".key");
    let mut public = args.out.clone().into_os_string();
    public.push(".pub");
    let (private, public) = (std::path::PathBuf::from(private), std::path::PathBuf::from(public));
    let key = PrivateKey::generate(args.key_type).context("generating a key")?;
    let id = key.public().key_id()?;
    key.write(&private).context("writing the private key")?;
    key.public().write(&public).context("writing the public key")?;
    if ctx.json {
        return ctx.print_json(&crate::report::Keygen {
            key_type: args.key_type,
            key_id: id,
            private,
            public,
        });
    }
    ctx.say(format!(
        "{} key {id}\n  private {} (mode 0600, keep it secret)\n  public  {}",
        args.key_type,
        private.display(),
        public.display()
    ));
    Ok(())
}
