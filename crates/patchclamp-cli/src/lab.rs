//! `patchclamp lab`: the experiments that run on the embedded default, with no files.

/// The experiments the lab will run (the training-lab issue builds them).
const EXPERIMENTS: &[(&str, &str)] = &[
    ("induction", "train 2-layer attention-only models with and without optogenetic clamps; watch induction heads form"),
    ("singh-ih", "Singh et al. 2024: which subcircuits must form for an induction head"),
    ("toy-phase", "the three-factor toy model of the induction phase change"),
    ("critical-periods", "deficits during training in deep linear networks"),
];

/// Arguments of `lab`.
#[derive(clap::Args)]
pub struct Args {
    /// The experiment to run; omit to list them.
    experiment: Option<String>,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let Some(name) = a.experiment else {
        println!("experiments (patchclamp lab NAME):");
        for (n, what) in EXPERIMENTS {
            println!("  {n:<17} {what}");
        }
        return Ok(());
    };
    let Some((_, what)) = EXPERIMENTS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = EXPERIMENTS.iter().map(|(n, _)| *n).collect();
        anyhow::bail!(
            "unknown experiment '{name}'; available: {}",
            names.join(", ")
        );
    };
    // The trainer lands with the training-lab issue; until then say so plainly.
    println!("patchclamp lab {name}: {what}");
    println!("not available yet: the training lab is the next milestone (see README, 'Status').");
    println!("meanwhile, try: patchclamp inspect tests/fixtures/models/gpt2");
    Ok(())
}
