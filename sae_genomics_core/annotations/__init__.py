"""Gene identifiers (HGNC) and the ten annotation databases, normalised to one long schema.

`identifiers` resolves any gene id to Ensembl; `http` is the HTTP layer every client uses; `base`
holds the common schema and the client contract; one module per database implements it.
"""
