"""Plain numpy analyses over Analysis / ExamplesAnalysis arrays; one module per family, no Gradio, no torch.

Import the module you need (this package imports nothing on its own, so importing one analysis never
pays for another's dependencies, e.g. umap-learn's numba start-up):

- ``exbert_hub.analyses.heads``: per-(layer, head) statistics of attention matrices (std, entropy,
  grammar correlation, span intensity, Clark et al. 2019's attention to specials / previous / next / self).
- ``exbert_hub.analyses.distances``: distances per layer between two spans of each example, grouped by a label.
- ``exbert_hub.analyses.projections``: PCA, UMAP and t-SNE per layer, aligned across layers; AttentionViz's
  joint projection of one head's queries and keys.
"""
