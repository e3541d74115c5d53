// File names of the images in a dump directory.

export const INVENTORY_FILE = "inventory.img";
export const PSTREE_FILE = "pstree.img";
export const FILES_FILE = "files.img";

export const coreFile = (pid: number) => `core-${pid}.img`;
export const mmFile = (pid: number) => `mm-${pid}.img`;
export const fdinfoFile = (pid: number) => `fdinfo-${pid}.img`;
export const pagesFile = (pid: number) => `pages-${pid}.img`;

/** A name the engine may give a page file: a plain file name, no path. */
export function isPlainFileName(name: string): boolean {
  return name.length > 0 && !name.includes("/") && name !== "." && name !== ".." && !name.includes("\0");
}
