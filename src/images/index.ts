export { writeImages } from "./write.js";
export { readImages, readInventory, hasInventory, type Inventory } from "./read.js";
export { IMAGE_VERSION, ImageKind, MAGIC, HEADER_SIZE } from "./format.js";
export { INVENTORY_FILE, PSTREE_FILE, FILES_FILE, coreFile, mmFile, fdinfoFile, pagesFile } from "./names.js";
