# The paper's Figures 1 and 10, computed (gsil.paper_figures): Figure 10 by calling every registered loss on a grid
# of log-ratios, Figure 1 as a seconds-long toy (one Gaussian fitted to a two-mode mixture by SFT's maximum
# likelihood and by GSIL's self-imitation loop) with its KL table. Depends on no other rule's output; β and γ are
# the alignment defaults, so the figures show the configured shift.


rule paper_figures:
    output:
        figure10=report(
            "<results>/figures/paper/figure10.png",
            caption="../report/paper_figures/figure10.rst",
            category="Paper figures",
        ),
        figure1=report(
            "<results>/figures/paper/figure1.png",
            caption="../report/paper_figures/figure1.rst",
            category="Paper figures",
        ),
        # The report shows the table's HTML page and offers the CSV as a download; the .md (the same text as the
        # page) stays out of it, as with rule aggregate_results' tables.
        kl_md="<results>/figures/paper/figure1_kl.md",
        kl_html=report(
            "<results>/figures/paper/figure1_kl.html",
            caption="../report/paper_figures/figure1_kl.rst",
            category="Paper figures",
        ),
        kl_csv=report(
            "<results>/figures/paper/figure1_kl.csv",
            caption="../report/paper_figures/figure1_kl.rst",
            category="Paper figures",
        ),
        numbers="<results>/figures/paper/paper_figures.json",
    params:
        output_dir=subpath(output.numbers, parent=True),
        beta=config["align_defaults"]["beta"],
        gamma=config["align_defaults"]["gamma"],
        # The toy's own settings (not the training seed): fixed here so that a change reruns the rule.
        seed=0,
        toy_loss="logistic",
        rounds=20,
    log:
        "<logs>/paper_figures/paper_figures.log",
    shell:
        "gsil paper-figures --output-dir {params.output_dir} --beta {params.beta} --gamma {params.gamma} "
        "--seed {params.seed} --toy-loss {params.toy_loss} --rounds {params.rounds} > {log} 2>&1"
