/*
  PrepareRealData.C -- MEG II analyzer macro: reconstructed (rec) files -> xecjax real-data input.

  Run inside the MEG II analyzer (it needs the MEG headers and libraries; it cannot be built
  outside that environment):

    cd $MEG2SYS/analyzer
    ./meganalyzer -b -q -I '/path/to/xecjax/macro/PrepareRealData.C+(430000, 2000, "_open.root", "/data/project/meg/offline/run")'

  Output: DataGammaAngle_<first>-<last>.root, tree "tree", one entry per selected event, with
  the branches of DESIGN.md section 4 for real data (per-sensor arrays and reconstructed
  quantities, no truth). The branch list below is the contract with tools/infer_real.py and
  xecjax.simulate.REAL_DATA_BRANCHES; tests/test_infer_real.py parses it from this file.

  Selection, in order:
    1. trigger mask 0 (the MEG physics trigger);
    2. MEGPhysicsSelection on the positron-gamma pairs (loose windows: only a clean gamma is
       wanted, not a signal candidate), first selected pair;
    3. no gamma pile-up (EvstatGamma == 0);
    4. XEC position, time and energy fits present, all 4760 channels read out;
    5. at least one valid npho and one channel with nphe > 50 (the time reference).

  Units: positions cm, npho photons, time seconds (as in the rec tree), timeReco ns, energyReco
  in the analyzer's unit (GeV). Invalid channels carry 1e10 in every per-sensor branch.
  emiVec is the unit vector from the positron vertex to the reconstructed gamma position;
  emiAng = (theta, phi) in degrees with phi = atan2(y, -x) (the xecjax angle convention).
*/

#include <TChain.h>
#include <TFile.h>
#include <TMath.h>
#include <TString.h>
#include <TSystem.h>
#include <TTree.h>
#include <TTreeReader.h>
#include <TTreeReaderArray.h>
#include <TTreeReaderValue.h>
#include <TVector3.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <map>
#include <vector>

#if !defined(__CLING__) || defined(__ROOTCLING__)
#include <ROMETreeInfo.h>
#include "MEGGLBParticlesDataCombine.h"
#include "glb/MEGPhysicsSelection.h"
#include "include/generated/MEGEventHeader.h"
#include "include/generated/MEGRecData.h"
#include "include/generated/MEGXECEneTotalSumRecResult.h"
#include "include/generated/MEGXECPMCluster.h"
#include "include/generated/MEGXECPosLocalFitResult.h"
#include "include/generated/MEGXECTimeFitResult.h"
#include "units/MEGSystemOfUnits.h"
#include "xec/xectools.h"
#endif

using namespace MEG;

namespace {

const Int_t kNChan = 4760;
const Float_t kInvalid = 1e10f;    // marks dead / missing channels and values
const Float_t kTimeRefNphe = 50;   // channels defining the time reference need nphe > 50
const Double_t kCLight = 29.9792458;  // cm/ns

// One output entry. The branches are declared in Book() and nowhere else.
struct GammaEntry {
   Int_t run = 0, event = 0;
   Float_t xyzRecoFI[3], xyzRecoLC[3], xyzVTX[3], emiVec[3], emiAng[2];
   Float_t uvwRecoFI[3], uvwRecoLC[3];
   Float_t energyReco = kInvalid, timeReco = kInvalid;
   Float_t npho[kNChan], time[kNChan], relative_npho[kNChan], relative_time[kNChan];
   Short_t ch_npho_max = -1, ch_time_min = -1;
   Float_t npho_max_used = kInvalid, time_min_used = kInvalid;

   void Book(TTree *t)
   {
      t->Branch("run", &run, "run/I");
      t->Branch("event", &event, "event/I");
      t->Branch("xyzRecoFI", xyzRecoFI, "xyzRecoFI[3]/F");
      t->Branch("xyzRecoLC", xyzRecoLC, "xyzRecoLC[3]/F");
      t->Branch("xyzVTX", xyzVTX, "xyzVTX[3]/F");
      t->Branch("emiVec", emiVec, "emiVec[3]/F");
      t->Branch("emiAng", emiAng, "emiAng[2]/F");
      t->Branch("uvwRecoFI", uvwRecoFI, "uvwRecoFI[3]/F");
      t->Branch("uvwRecoLC", uvwRecoLC, "uvwRecoLC[3]/F");
      t->Branch("energyReco", &energyReco, "energyReco/F");
      t->Branch("timeReco", &timeReco, "timeReco/F");
      t->Branch("npho", npho, Form("npho[%d]/F", kNChan));
      t->Branch("time", time, Form("time[%d]/F", kNChan));
      t->Branch("relative_npho", relative_npho, Form("relative_npho[%d]/F", kNChan));
      t->Branch("relative_time", relative_time, Form("relative_time[%d]/F", kNChan));
      t->Branch("ch_npho_max", &ch_npho_max, "ch_npho_max/S");
      t->Branch("ch_time_min", &ch_time_min, "ch_time_min/S");
      t->Branch("npho_max_used", &npho_max_used, "npho_max_used/F");
      t->Branch("time_min_used", &time_min_used, "time_min_used/F");
   }
};

Bool_t IsValid(Float_t v) { return std::isfinite(v) && v < 1e9f; }

// relative_npho = npho / max valid npho, relative_time = time - min time over channels with
// nphe > 50 (DESIGN.md section 4). Returns kFALSE when the event has no reference channel.
Bool_t FillRelative(GammaEntry &e, const Float_t *nphe)
{
   e.ch_npho_max = e.ch_time_min = -1;
   for (Int_t ch = 0; ch < kNChan; ++ch) {
      if (IsValid(e.npho[ch]) && e.npho[ch] >= 0 &&
          (e.ch_npho_max < 0 || e.npho[ch] > e.npho[e.ch_npho_max]))
         e.ch_npho_max = ch;
      if (IsValid(e.time[ch]) && IsValid(nphe[ch]) && nphe[ch] > kTimeRefNphe &&
          (e.ch_time_min < 0 || e.time[ch] < e.time[e.ch_time_min]))
         e.ch_time_min = ch;
   }
   if (e.ch_npho_max < 0 || e.ch_time_min < 0 || e.npho[e.ch_npho_max] <= 0) return kFALSE;
   e.npho_max_used = e.npho[e.ch_npho_max];
   e.time_min_used = e.time[e.ch_time_min];
   for (Int_t ch = 0; ch < kNChan; ++ch) {
      e.relative_npho[ch] = IsValid(e.npho[ch]) ? e.npho[ch] / e.npho_max_used : kInvalid;
      e.relative_time[ch] = IsValid(e.time[ch]) ? e.time[ch] - e.time_min_used : kInvalid;
   }
   return kTRUE;
}

// rec files of runs first, first+1, ... (up to nRuns found), in <dir>/<run/1000>xxx/ or <dir>/.
std::map<Int_t, TString> FindRecFiles(TString dir, TString suffix, Int_t first, Int_t nRuns)
{
   std::map<Int_t, TString> files;
   for (Int_t run = first, misses = 0; (Int_t)files.size() < nRuns && misses < 1000; ++run) {
      TString path = Form("%s/%03dxxx/rec%06d%s", dir.Data(), run / 1000, run, suffix.Data());
      if (gSystem->AccessPathName(path))  // kTRUE when the file does NOT exist
         path = Form("%s/rec%06d%s", dir.Data(), run, suffix.Data());
      if (gSystem->AccessPathName(path)) {
         ++misses;
         continue;
      }
      files[run] = path;
      misses = 0;
   }
   return files;
}

}  // namespace

void PrepareRealData(Int_t firstRun = 430000, Int_t nRuns = 2000,
                     TString suffix = "_open.root",
                     TString recDir = "/data/project/meg/offline/run")
{
   XECTOOLS::InitXECGeometryParameters(XECTOOLS::UVWDefinition::Global, 64.84, 106.27, 67.03,
                                       96., 125.52, 0, 0, 0);
   std::map<Int_t, TString> files = FindRecFiles(recDir, suffix, firstRun, nRuns);
   if (files.empty()) {
      std::cerr << "PrepareRealData: no rec*" << suffix << " files from run " << firstRun
                << " in " << recDir << std::endl;
      return;
   }
   TChain rec("rec");
   for (const auto &f : files) rec.Add(f.second);

   // Written under a temporary name and renamed when complete: no half-written output.
   TString outName = Form("DataGammaAngle_%d-%d.root", files.begin()->first, files.rbegin()->first);
   TString tmpName = outName + ".part";
   TFile out(tmpName, "RECREATE");
   TTree *tree = new TTree("tree", "MEG II gamma events for xecjax inference");
   static GammaEntry e;  // ~76 kB of arrays: keep it off the stack
   e.Book(tree);
   static Float_t nphe[kNChan];

   TTreeReader reader(&rec);
   TTreeReaderValue<ROMETreeInfo> info(reader, "Info.");
   TTreeReaderValue<MEGEventHeader> header(reader, "eventheader.");
   TTreeReaderValue<MEGRecData> reco(reader, "reco.");
   TTreeReaderValue<MEGGLBParticlesDataCombine> comb(reader, "combination.");
   TTreeReaderArray<MEGXECPosLocalFitResult> posFit(reader, "xecposlfit");
   TTreeReaderArray<MEGXECTimeFitResult> timeFit(reader, "xectimefit");
   TTreeReaderArray<MEGXECEneTotalSumRecResult> eneRec(reader, "xecenetotalsum");
   TTreeReaderArray<MEGXECPMCluster> cluster(reader, "xeccl");

   // Wide windows: the pair only provides the positron vertex of a clean physics gamma.
   MEGPhysicsSelection selector(kFALSE, 0, kTRUE);
   selector.SetThresholds(EBeamPeriodID::kBeamPeriod2022, kTRUE);
   selector.fTimePositronGamma[0] = -5 * nanosecond;
   selector.fTimePositronGamma[1] = 5 * nanosecond;
   selector.fCosThetaPositronGamma[0] = -1;
   selector.fCosThetaPositronGamma[1] = 1;
   selector.fThetaPositronGamma[0] = selector.fPhiPositronGamma[0] = -2 * radian;
   selector.fThetaPositronGamma[1] = selector.fPhiPositronGamma[1] = 2 * radian;
   selector.fEPositron[0] = 40 * MeV;
   selector.fEPositron[1] = 60 * MeV;
   selector.fEGamma[0] = 35 * MeV;
   selector.fEGamma[1] = 65 * MeV;

   Long64_t nRead = 0, nSelected = 0;
   const Long64_t nTotal = rec.GetEntries();
   while (reader.Next()) {
      if (++nRead % 10000 == 0) std::cout << nRead << " / " << nTotal << std::endl;
      if (header->Getmask() != 0) continue;                                   // 1. trigger

      std::vector<Bool_t> selected;
      selector.CombinedSelection(selected, comb.Get(), reco.Get());           // 2. physics
      auto pair = std::find(selected.begin(), selected.end(), kTRUE);
      if (pair == selected.end()) continue;
      const Int_t iPair = pair - selected.begin();
      const Int_t iGamma = comb->GetGammaIndexAt(iPair);
      const Int_t iPositron = comb->GetPositronIndexAt(iPair);
      if (reco->GetEvstatGammaAt(iGamma) != 0) continue;                      // 3. pile-up
      if ((Int_t)posFit.GetSize() <= iGamma || (Int_t)timeFit.GetSize() <= iGamma ||
          (Int_t)eneRec.GetSize() <= iGamma || cluster.GetSize() != (UInt_t)kNChan)
         continue;                                                            // 4. fits

      e.run = info->GetRunNumber();
      e.event = info->GetEventNumber();
      const TVector3 vtx(reco->GetXPositronAt(iPositron), reco->GetYPositronAt(iPositron),
                         reco->GetZPositronAt(iPositron));
      const TVector3 gamma(reco->GetXGammaAt(iGamma), reco->GetYGammaAt(iGamma),
                           reco->GetZGammaAt(iGamma));
      const TVector3 dir = (gamma - vtx).Unit();
      for (Int_t i = 0; i < 3; ++i) {
         e.xyzVTX[i] = vtx[i];
         e.emiVec[i] = dir[i];
      }
      e.emiAng[0] = dir.Theta() * TMath::RadToDeg();
      e.emiAng[1] = TMath::ATan2(dir.Y(), -dir.X()) * TMath::RadToDeg();

      const MEGXECPosLocalFitResult &pos = posFit.At(iGamma);
      Double_t uvwLC[3], xyzLC[3];
      for (Int_t i = 0; i < 3; ++i) {
         e.xyzRecoFI[i] = pos.GetxyzAt(i);
         e.uvwRecoFI[i] = pos.GetuvwAt(i);
         uvwLC[i] = pos.GetuvwLightCenterAt(i);
         e.uvwRecoLC[i] = uvwLC[i];
      }
      XECTOOLS::UVW2XYZ(uvwLC, xyzLC);
      for (Int_t i = 0; i < 3; ++i) e.xyzRecoLC[i] = xyzLC[i];
      e.energyReco = eneRec.At(iGamma).Getenergy();
      // gamma time at the vertex, ns: fitted time minus the flight from vertex to conversion
      const TVector3 fi(e.xyzRecoFI[0], e.xyzRecoFI[1], e.xyzRecoFI[2]);
      e.timeReco = 1e9 * timeFit.At(iGamma).Gettime() - (fi - vtx).Mag() / kCLight;

      for (Int_t ch = 0; ch < kNChan; ++ch) {
         MEGXECPMCluster &cl = cluster.At(ch);
         e.npho[ch] = cl.GetnphoAt(0);
         e.time[ch] = cl.GettpmAt(0);
         nphe[ch] = cl.GetnpheAt(0);
      }
      if (!FillRelative(e, nphe)) continue;                                   // 5. references
      tree->Fill();
      ++nSelected;
   }
   out.Write();
   out.Close();
   if (gSystem->Rename(tmpName, outName) != 0) {
      std::cerr << "PrepareRealData: cannot rename " << tmpName << " to " << outName << std::endl;
      return;
   }
   std::cout << "PrepareRealData: " << nSelected << " of " << nRead << " events -> " << outName
             << std::endl;
}
