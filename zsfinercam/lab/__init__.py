"""The prompt lab: a local web page for trying prompts on cached image features.

`session` holds the plain functions (parse a request, run it on cached features, lay out
the results); `app` wires them to gradio widgets (gradio is imported only there).
"""
