//! `palisade crds`: the CustomResourceDefinitions of Palisade's own kinds.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(default_value = "manifests/crds")]
    dir: PathBuf,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    for (name, text) in palisade::model::crd::crds()? {
        let path = args.dir.join(name);
        std::fs::write(&path, text)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
