"""What tests, benchmarks and the offline demo need beside the engine; the task never imports it.

``published``: the published Kandinsky 2.2 repos' configs and file lists; ``tiny``: random-weight repos
built from them; ``reference``: diffusers' own combined pipelines over stages already loaded. It imports
nothing from the engine, so it loads the same whether the plugin folder or its parent is on the path.
"""
