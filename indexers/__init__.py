"""SIMS indexers: dataset readers, bank builds (local or on Dask) and FAISS index builds."""
