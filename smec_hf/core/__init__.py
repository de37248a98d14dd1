"""The ground layer every other part stands on: shared types, exact retrieval and nDCG, PCA, the fit settings,
atomic writes and the declared folder layout. It imports nothing else from the package."""
