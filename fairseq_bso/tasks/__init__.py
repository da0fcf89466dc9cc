"""Tasks of the plugin; each module registers itself with fairseq."""
