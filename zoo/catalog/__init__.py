"""The zoo's catalog: which models exist and where their weights come from.

`registry` (name -> spec, weights and card; `create_model`), `architectures` (the table of the study's
architectures at each scale) and `presets` (its specs by name); `hub` (fetching weights: bundled file,
cache, mirror, source, sha256 first) with `hub_files` (its file primitives); `checkpoint` (reading
checkpoint files, checking them against a model, what they may leave out).

Named `catalog`, not `hub` or `registry`: those are old module paths (zoo.hub, zoo.registry) that must
keep importing the modules now here (zoo/_legacy.py), so no package may take their names.
"""
