"""Where chunks, their vectors and their keyword index live: LanceDB (embedded) or Qdrant."""

from tunelab.rag.stores.base import STORES, Store, open_store

__all__ = ["STORES", "Store", "open_store"]
