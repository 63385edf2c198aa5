"""The paper's illustrative figures, computed rather than drawn by hand (`gsil paper-figures`).

- Figure 10 (`loss_shapes`): each registered loss's real-side penalty ℓ₊ and generated-side penalty ℓ₋ against the
  log-ratio Δ, at γ = 0 and at the configured γ, obtained by calling the functions in `gsil.losses.LOSSES` on a grid
  (the figure follows the registry; pairwise losses are drawn against the margin Δ⁺ − Δ⁻).
- Figure 1 (`toy`): a 1-D two-component Gaussian mixture fitted by one Gaussian, by maximum likelihood (SFT's
  objective, the forward KL) and by GSIL's self-imitation loop with a registered loss on f = β·log(p_θ/p_θt) + γ,
  with the KL divergences of every fit in both directions (numerical integration).

`report.build_all` runs both and writes the figures, the KL table (Markdown + CSV) and a JSON of the numbers;
`draw` holds the matplotlib code (Agg backend). The numeric modules import neither matplotlib nor each other.
"""
