"""The built-in demo: a procedural multi-objective world (``world``) and a tiny tokenizer and Llama (``tiny``)."""
