"""Storage core: content-defined chunking, file entries, the file index tree and the object stores."""
