"""The only part that imports `libvirt`: inventory, labels in `<metadata>`, domain XML."""
