#!/usr/bin/env python3
"""A second, independent DICOM client for halong's interop tests (pynetdicom + pydicom).

Commands (each prints one JSON document on stdout):
  send-testdata HOST PORT AE   send every storage object among pydicom's bundled test
                               files, each file as it is on disk (its own SOP class and
                               transfer syntax), over one association
  send HOST PORT AE FILE...    send the given Part 10 files, one association
  send-unchecked HOST PORT AE FILE  send one file whose dataset need not parse (its file
                               meta gives SOP class, instance and transfer syntax)
  make DIR [KIB]               write synthetic instances (UTF-8 Vietnamese names, an
                               accession number) into DIR, print their paths; with KIB,
                               their pixel data is that many KiB
  find HOST PORT AE            propose Verification and Modality Worklist FIND on one
                               association; print each context's result and a C-ECHO status
"""
import hashlib
import json
import sys

from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

STORAGE_CLASSES = {c.abstract_syntax for c in StoragePresentationContexts}
# pynetdicom's default list is cut at 128 contexts; every storage class it knows:
from pynetdicom import _config  # noqa: E402,F401
from pynetdicom.sop_class import _STORAGE_CLASSES  # noqa: E402

STORAGE_CLASSES |= set(_STORAGE_CLASSES.values())


def dataset_offset(path):
    """Byte offset of the dataset after the preamble and file meta group, or None."""
    with open(path, "rb") as f:
        head = f.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        return None
    return 144 + int.from_bytes(head[140:144], "little")


def describe(path):
    try:
        ds = dcmread(path, stop_before_pixels=True)
        meta = ds.file_meta
        info = {
            "path": path,
            "sop_class": str(meta.MediaStorageSOPClassUID),
            "sop_instance": str(meta.MediaStorageSOPInstanceUID),
            "transfer_syntax": str(meta.TransferSyntaxUID),
            "study": str(ds.StudyInstanceUID),
            "series": str(ds.SeriesInstanceUID),
            "dataset_offset": dataset_offset(path),
        }
    except Exception:
        return None
    if info["dataset_offset"] is None or info["sop_class"] not in STORAGE_CLASSES:
        return None
    if str(ds.SOPInstanceUID) != info["sop_instance"] or str(ds.SOPClassUID) != info["sop_class"]:
        return None
    return info


class SentDatasets:
    """Digests of every dataset as it went on the wire, from the P-DATA-TF PDUs sent
    (PS3.8 §9.3.5): pynetdicom may re-encode a file (drop group lengths, re-deflate), so
    the archive is compared with what was sent, not with the file."""

    def __init__(self):
        self.current = hashlib.sha256()
        self.size = 0
        self.done = []

    def on_sent(self, event):
        pdu = event.data
        if pdu[0] != 0x04:
            return
        i = 6
        while i < len(pdu):
            length = int.from_bytes(pdu[i:i + 4], "big")
            control = pdu[i + 5]
            value = pdu[i + 6:i + 4 + length]
            if not control & 0x01:  # a data fragment, not a command one
                self.current.update(value)
                self.size += len(value)
                if control & 0x02:  # last fragment
                    self.done.append((self.current.hexdigest(), self.size))
                    self.current = hashlib.sha256()
                    self.size = 0
            i += 4 + length


def send(host, port, ae_title, infos):
    ae = AE(ae_title="PYNETDICOM")
    contexts = sorted({(i["sop_class"], i["transfer_syntax"]) for i in infos})
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, ts)
    assert len(contexts) <= 128, len(contexts)
    sent = SentDatasets()
    assoc = ae.associate(
        host, int(port), ae_title=ae_title, evt_handlers=[(evt.EVT_DATA_SENT, sent.on_sent)]
    )
    if not assoc.is_established:
        return {"established": False, "results": []}
    results = []
    for info in infos:
        try:
            status = assoc.send_c_store(info["path"])
        except ValueError as e:
            # pynetdicom itself could not send this file; nothing reached halong.
            results.append(dict(info, status=None, client_error=str(e)))
            continue
        code = int(status.Status) if status and "Status" in status else None
        comment = str(status.ErrorComment) if status and "ErrorComment" in status else None
        digest, size = sent.done[-1] if sent.done else (None, None)
        sent.done.clear()
        results.append(
            dict(info, status=code, comment=comment, sent_sha256=digest, sent_bytes=size)
        )
    assoc.release()
    return {"established": True, "contexts": len(contexts), "results": results}


def make(out_dir, pixel_kib=None):
    paths = []
    study = generate_uid()
    series = generate_uid()
    people = [
        ("Nguyễn^Thị Ngọc Anh", "079190000001", "ACC-0001"),
        ("Đặng^Văn Đức", "079190000002", "ACC-0002"),
    ]
    for n, (name, pid, acc) in enumerate(people, start=1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study if n == 1 else generate_uid()
        ds.SeriesInstanceUID = series if n == 1 else generate_uid()
        ds.PatientName = name
        ds.PatientID = pid
        ds.IssuerOfPatientID = "CCCD"
        ds.PatientSex = "F" if n == 1 else "M"
        ds.PatientBirthDate = "19900101"
        ds.AccessionNumber = acc
        ds.Modality = "CT"
        ds.StudyDate = "20261120"
        ds.StudyTime = "081500"
        ds.StudyDescription = "CT sọ não"
        ds.SeriesNumber = 1
        ds.InstanceNumber = n
        side = 2 if pixel_kib is None else int((pixel_kib * 512) ** 0.5)
        ds.Rows = side
        ds.Columns = side
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = bytes((i * 7 + n) % 251 for i in range(side * side * 2))
        path = f"{out_dir}/synthetic_{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def find(host, port, ae_title):
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate(host, int(port), ae_title=ae_title)
    if not assoc.is_established:
        return {"established": False}
    contexts = {str(c.abstract_syntax): c.result for c in assoc.rejected_contexts}
    accepted = [str(c.abstract_syntax) for c in assoc.accepted_contexts]
    echo = assoc.send_c_echo()
    assoc.release()
    return {
        "established": True,
        "accepted": accepted,
        "rejected": contexts,
        "echo": int(echo.Status) if echo and "Status" in echo else None,
    }


def main():
    cmd = sys.argv[1]
    if cmd == "send-testdata":
        infos = [i for i in (describe(p) for p in sorted(get_testdata_files())) if i]
        out = send(*sys.argv[2:5], infos)
    elif cmd == "send":
        infos = [i for i in (describe(p) for p in sys.argv[5:]) if i]
        out = send(*sys.argv[2:5], infos)
    elif cmd == "send-unchecked":
        from pydicom.filereader import read_file_meta_info

        path = sys.argv[5]
        meta = read_file_meta_info(path)
        info = {
            "path": path,
            "sop_class": str(meta.MediaStorageSOPClassUID),
            "sop_instance": str(meta.MediaStorageSOPInstanceUID),
            "transfer_syntax": str(meta.TransferSyntaxUID),
            "dataset_offset": dataset_offset(path),
        }
        out = send(*sys.argv[2:5], [info])
    elif cmd == "make":
        out = make(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
    elif cmd == "find":
        out = find(*sys.argv[2:5])
    else:
        sys.exit(f"unknown command {cmd}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
