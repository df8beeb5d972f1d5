"""tmstarget: personalized sgACC-anticorrelation TMS targets from fMRIPrep derivatives.

Research use only. Not a medical device. See SAFETY.md.
"""

__version__ = "0.1.0"

#: The template space every MNI coordinate in tmstarget refers to.
MNI_SPACE = "MNI152NLin2009cAsym"
#: Coordinate convention for every coordinate written by tmstarget.
CONVENTION = "RAS+ mm (world coordinates of the referenced image)"
