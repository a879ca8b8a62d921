"""Board tops, the host link's host side, bitstream builds and resource reports."""
